// ValueSets binding the project CodeSystems (one per CodeSystem, plus the subsets the profiles bind).

RuleSet: ProjectValueSet
* ^status = #draft
* ^experimental = false
* ^publisher = "cart-fhir"

ValueSet: CartToxicityVS
Id: cart-toxicity
Title: "CAR-T toxicity concepts"
Description: "All codes of the cart-toxicity CodeSystem."
* insert ProjectValueSet
* include codes from system CartToxicity

ValueSet: ToxicityType
Id: toxicity-type
Title: "CAR-T toxicity types"
Description: "Toxicity types (Condition.code, AdverseEvent.event local coding)."
* insert ProjectValueSet
* CartToxicity#crs
* CartToxicity#icans
* CartToxicity#iec-hs
* CartToxicity#icaht
* CartToxicity#infection
* CartToxicity#neurotoxicity-other
* CartToxicity#hypogammaglobulinemia
* CartToxicity#b-cell-aplasia
* CartToxicity#second-malignancy
* CartToxicity#prolonged-cytopenia

ValueSet: ToxicityAssessment
Id: toxicity-assessment
Title: "CAR-T toxicity assessments"
Description: "Grading scales and assessments (Observation.code of cart-toxicity-grade, Condition.stage.type)."
* insert ProjectValueSet
* CartToxicity#crs-grade-astct
* CartToxicity#icans-grade-astct
* CartToxicity#iec-hs-grade
* CartToxicity#icaht-grade-early
* CartToxicity#icaht-grade-late
* CartToxicity#car-hematotox-score
* CartToxicity#infection-grade-ctcae
* CartToxicity#neurotoxicity-grade-ctcae
* CartToxicity#treatment-response
* CartToxicity#hypogammaglobulinemia-iago
* CartToxicity#b-cell-aplasia-iago
* CartToxicity#second-malignancy-iago
* CartToxicity#prolonged-cytopenia-ctcae

ValueSet: ToxicityComponent
Id: toxicity-component
Title: "CAR-T grade components"
Description: "Component codes of grade and assessment Observations (Observation.component.code)."
* insert ProjectValueSet
* include codes from system CartToxicity
* exclude CartToxicity#crs
* exclude CartToxicity#icans
* exclude CartToxicity#iec-hs
* exclude CartToxicity#icaht
* exclude CartToxicity#infection
* exclude CartToxicity#neurotoxicity-other
* exclude CartToxicity#hypogammaglobulinemia
* exclude CartToxicity#b-cell-aplasia
* exclude CartToxicity#second-malignancy
* exclude CartToxicity#prolonged-cytopenia
* exclude CartToxicity#automated-grading

ValueSet: ComponentAnswer
Id: component-answer
Title: "CAR-T component answers"
Description: "Coded answers of grade components (Observation.component.valueCodeableConcept)."
* insert ProjectValueSet
* include codes from system CrsHypotensionTier
* include codes from system CrsOxygenTier
* include codes from system ConsciousnessLevel
* include codes from system SeizureType
* include codes from system MotorFinding
* include codes from system CerebralEdemaFinding
* include codes from system IecHsScreenCriterion
* include codes from system IcansPhenotype
* include codes from system InflammatoryContext
* include codes from system MalignancyLineage

ValueSet: GradeInterpretation
Id: grade-interpretation
Title: "Grade interpretation"
Description: "Observation.interpretation of grades and assessments: grade qualifier and CAR-HEMATOTOX risk group."
* insert ProjectValueSet
* include codes from system GradeQualifier
* include codes from system CarHematotoxRisk

ValueSet: ToxicityGradeVS
Id: toxicity-grade
Title: "Toxicity grade"
Description: "All codes of the toxicity-grade CodeSystem."
* insert ProjectValueSet
* include codes from system ToxicityGrade

ValueSet: GradeQualifierVS
Id: grade-qualifier
Title: "Grade qualifier"
Description: "All codes of the grade-qualifier CodeSystem."
* insert ProjectValueSet
* include codes from system GradeQualifier

ValueSet: CarHematotoxRiskVS
Id: car-hematotox-risk
Title: "CAR-HEMATOTOX risk group"
Description: "All codes of the car-hematotox-risk CodeSystem."
* insert ProjectValueSet
* include codes from system CarHematotoxRisk

ValueSet: CrsHypotensionTierVS
Id: crs-hypotension-tier
Title: "CRS hypotension management tier"
Description: "All codes of the crs-hypotension-tier CodeSystem."
* insert ProjectValueSet
* include codes from system CrsHypotensionTier

ValueSet: CrsOxygenTierVS
Id: crs-oxygen-tier
Title: "CRS oxygen support tier"
Description: "All codes of the crs-oxygen-tier CodeSystem."
* insert ProjectValueSet
* include codes from system CrsOxygenTier

ValueSet: IecHsScreenCriterionVS
Id: iec-hs-screen-criterion
Title: "IEC-HS screen criterion"
Description: "All codes of the iec-hs-screen-criterion CodeSystem."
* insert ProjectValueSet
* include codes from system IecHsScreenCriterion

ValueSet: IcansPhenotypeVS
Id: icans-phenotype
Title: "ICANS episode phenotype"
Description: "All codes of the icans-phenotype CodeSystem."
* insert ProjectValueSet
* include codes from system IcansPhenotype

ValueSet: InflammatoryContextVS
Id: inflammatory-context
Title: "Inflammatory context at ICANS onset"
Description: "All codes of the inflammatory-context CodeSystem."
* insert ProjectValueSet
* include codes from system InflammatoryContext

ValueSet: MalignancyLineageVS
Id: malignancy-lineage
Title: "Second malignancy lineage"
Description: "All codes of the malignancy-lineage CodeSystem."
* insert ProjectValueSet
* include codes from system MalignancyLineage

ValueSet: CartObservationVS
Id: cart-observation
Title: "CAR-T observation codes"
Description: "All codes of the cart-observation CodeSystem."
* insert ProjectValueSet
* include codes from system CartObservation

ValueSet: OxygenDeliveryVS
Id: oxygen-delivery
Title: "Oxygen delivery"
Description: "All codes of the oxygen-delivery CodeSystem."
* insert ProjectValueSet
* include codes from system OxygenDelivery

ValueSet: ConsciousnessLevelVS
Id: consciousness-level
Title: "Level of consciousness (ASTCT)"
Description: "All codes of the consciousness-level CodeSystem."
* insert ProjectValueSet
* include codes from system ConsciousnessLevel

ValueSet: SeizureTypeVS
Id: seizure-type
Title: "Seizure type (ASTCT)"
Description: "All codes of the seizure-type CodeSystem."
* insert ProjectValueSet
* include codes from system SeizureType

ValueSet: MotorFindingVS
Id: motor-finding
Title: "Motor finding (ASTCT)"
Description: "All codes of the motor-finding CodeSystem."
* insert ProjectValueSet
* include codes from system MotorFinding

ValueSet: CerebralEdemaFindingVS
Id: cerebral-edema-finding
Title: "Cerebral edema finding (ASTCT)"
Description: "All codes of the cerebral-edema-finding CodeSystem."
* insert ProjectValueSet
* include codes from system CerebralEdemaFinding

ValueSet: CartProductVS
Id: cart-product
Title: "CAR-T product"
Description: "All codes of the cart-product CodeSystem."
* insert ProjectValueSet
* include codes from system CartProduct

ValueSet: GradingActivity
Id: grading-activity
Title: "Grading run activity"
Description: "Provenance.activity of a grading run: create or update (output-contract.md section 4)."
* insert ProjectValueSet
* $v3-DataOperation#CREATE
* $v3-DataOperation#UPDATE
